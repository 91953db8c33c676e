"""Sagas: book flight, car and hotel; on a terminal failure undo what was booked, in reverse."""
