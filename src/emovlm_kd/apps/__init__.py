"""Applications built on the library: the command line, and later the server and benchmark."""
