"""Pure rules of the program: no I/O, no FHIR library, no database. May import service.errors."""
