"""Racing agents: the first answer wins, the loser is cancelled; a new message interrupts."""
