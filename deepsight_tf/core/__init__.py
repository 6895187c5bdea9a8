"""Foundations every layer uses: settings, errors and exit codes, the workspace, checks."""
