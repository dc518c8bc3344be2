"""Live video-to-video pipelines: the :class:`~streamgw.pipelines.base.LivePipeline` Protocol,
the shipped CPU pipelines, and the registry that finds every installed one by entry point."""
