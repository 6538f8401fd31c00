"""The ``fhirgate`` command line."""
