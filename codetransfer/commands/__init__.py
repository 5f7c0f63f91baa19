"""One module per ``codetransfer`` verb, each with ``add_arguments(parser)`` and ``run(args) -> int``.

A verb parses its flags, calls one library function and prints what it wrote. The modules import only
the standard library at their top (``codetransfer --help`` imports all of them); the library is
imported inside ``run``.
"""
