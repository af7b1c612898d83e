"""The models package's user-facing error: one line naming the problem and the fix."""


class ConfigError(ValueError):
    """A bad model / training / sampling setting (unknown preset, impossible size, too little data...)."""
