"""The orchestrator node: GetOrchestrator over gRPC, /segment over HTTPS, PyAV transcoding."""
