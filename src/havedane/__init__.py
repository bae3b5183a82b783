"""havedane: does your outgoing mail server validate DANE (RFC 7672)?"""

__version__ = "0.1.0"
