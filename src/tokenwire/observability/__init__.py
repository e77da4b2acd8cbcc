"""What operators watch: metrics and traces, plugged into the core's `Telemetry`."""
