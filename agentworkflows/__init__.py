"""Agent workflows: chained, parallel, orchestrator-worker and evaluator-optimizer agents."""
