"""`coracle`: a native client of the Docker Engine API with docker's verbs and flags.

Start-up time is a feature here (`coracle ps` in shell loops), so modules on the
start-up path import `typing` only for type checkers (`TYPE_CHECKING = False`
guard; annotations are postponed strings) and import the rest lazily.
"""
