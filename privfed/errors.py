"""Exceptions privfed raises on purpose, each carrying a message that says what to do."""


class PrivfedError(Exception):
    """Base class: every error privfed raises deliberately."""


class ConfigError(PrivfedError):
    """A configuration value is unknown, of the wrong type, or impossible.

    The message always names the dotted key and the allowed values, so the CLI can print it as one line.
    """

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class MissingAssetError(PrivfedError):
    """An offline model or dataset is not installed; the message names the package that provides it."""


class PrivacyViolationError(PrivfedError):
    """DP-SGD did not do what it promised (a tensor got no per-sample gradient or did not move after a noisy step).

    Raised instead of continuing, because a silently non-private or non-training run is worse than a crash.
    """
