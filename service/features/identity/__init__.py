"""One person across organizations: person-identifier domains an administrator declares."""
