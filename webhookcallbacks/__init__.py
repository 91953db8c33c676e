"""Webhook callbacks: Stripe events processed durably, once per event id, routed per invoice."""
