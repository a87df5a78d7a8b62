"""The mirror publisher: the placement worker's background thread that saves the mirror,
releases the answers it covers, writes its status and expires waiters.

thread.py         Publisher: the thread and its round
saves.py          the mirror-writing round: epoch check, coverage, group commit and pacing
held_replies.py   releases held answers once the mirror covers them
status.py         the publisher's status hash: writes and failing rounds
mirror_status.py  the status hash parsed once, for the publisher and the shim
"""
