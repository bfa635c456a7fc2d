"""The one exception type a user can cause; the CLI prints its message, never a traceback."""


class UserError(Exception):
    """A problem with the user's input, said in one sentence that tells what to do.

    `exit_code` is what the CLI exits with (1: the input is unusable, 2: the command line is wrong).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
