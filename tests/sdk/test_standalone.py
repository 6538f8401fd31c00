"""The SDK ``fhirgate.client`` imports nothing of the server, so it can ship on its own."""

from __future__ import annotations

import grimp


def test_client_imports_no_fhirgate_module_outside_itself() -> None:
    graph = grimp.build_graph("fhirgate")
    sdk = {"fhirgate.client", *graph.find_descendants("fhirgate.client")}
    # upstream: every module the SDK imports, directly or through a chain of imports
    imported = graph.find_upstream_modules("fhirgate.client", as_package=True)
    server = sorted(imported - sdk)
    assert not server, f"fhirgate.client imports server modules: {server}"
