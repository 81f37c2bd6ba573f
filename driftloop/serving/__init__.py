"""Serving: the pieces of the BentoML service that need no BentoML (guardrails, request
log, prompts), and the local deployment supervisor."""
