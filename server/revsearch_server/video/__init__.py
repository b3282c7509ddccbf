"""Video input for video search: probing a spooled upload and sampling a few frames from it.

`sampling` holds the frame sampler (uniform, seeded jitter, scene changes) with its limits and
error rules; the pipeline embeds the frames it returns like uploaded images.
"""
