"""FHIR definitions shared by the authorization server and the FHIR API."""
