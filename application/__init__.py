"""The commands: one async function per use case, over the repositories (docs/architecture.md)."""
