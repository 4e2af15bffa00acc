"""The routers of the HTTP interface: webhooks, ops, customer pages."""
