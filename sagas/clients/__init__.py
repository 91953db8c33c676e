"""Stand-ins for the flight, car rental and hotel booking systems the saga talks to.

Each client only logs what a real one would do. Booking and cancelling are keyed by the
customer id, so both are idempotent: doing one twice has the effect of doing it once, and
cancelling a booking that was never made does nothing. The saga relies on that.
"""
