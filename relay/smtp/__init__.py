"""The SMTP submission side: listeners, protocol policy, handler hooks, AUTH."""
