"""Postfix (and other MX servers): the socketmap table and the policy delegation server."""
