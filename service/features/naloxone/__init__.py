"""Naloxone and overdose response: kits, education and reversals recorded by the JMS
(``records``), the facts read back from them (``facts``), the form prefill (``prefill``) and
the program summary (``summary``)."""
