"""The HTTP endpoints, one module per resource; each calls ``VoiceSearch`` and nothing lower."""
