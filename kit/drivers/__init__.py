"""Drivers apply build/<site>/ to a target: `local` (Ansible + this host's Docker)."""
