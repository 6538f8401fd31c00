"""fhirgate: an OAuth 2.0 authorization server with a protected FHIR API for health-data APIs."""

__version__ = "0.1.0"
