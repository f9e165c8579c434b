-- The W3C trace context (traceparent, tracestate) of the order a bill was issued for, so that
-- the bank's callback and the expiry sweep continue the order's trace. NULL: bills issued
-- before this column existed (or without a trace); they publish in the current trace.
ALTER TABLE bills ADD COLUMN trace_context jsonb;
