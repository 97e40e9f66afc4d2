"""Human escalation: the queue of open questions to the operator, their answers, and the web console."""
