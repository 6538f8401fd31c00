"""The domain's words: the records, enumerations and errors that the OAuth core, the FHIR API,
storage and every surface share, and the storage contracts the core depends on
(:mod:`fhirgate.domain.stores`). Nothing here imports the rest of fhirgate."""
