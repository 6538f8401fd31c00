"""The grant types of the token endpoint, one module each (RFC 6749 §4): each names its
``grant_type`` and parameters, checks them, and exchanges them for a token
(:class:`~fhirgate.oauth.grants.base.Grant`). Adding a grant is adding a module here and
listing it where the services are built (:mod:`fhirgate.services`)."""
