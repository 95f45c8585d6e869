"""Test hosts (sshd + own Docker engine in privileged containers) for the `hosts` target."""
