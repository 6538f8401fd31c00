"""The developer dashboard: people, their organizations and roles, and (next) its pages."""
