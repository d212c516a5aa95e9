"""Configuration and the error vocabulary: what every other part of the service shares."""
