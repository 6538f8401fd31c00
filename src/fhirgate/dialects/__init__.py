"""Vendor dialects: thin adapters that expose the core at a vendor's paths and shapes."""
