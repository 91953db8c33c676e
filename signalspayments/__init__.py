"""Payment signals: a Stripe payment that ends synchronously or, when slow, via a webhook."""
