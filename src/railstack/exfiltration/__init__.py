"""The exfiltration rail: an answer that would carry the conversation out through an image or link
to another host, or drive the client's terminal with escape sequences."""
