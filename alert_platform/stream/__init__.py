"""Stream mode: resident workers that enrich and deliver records as they arrive.

One worker per *stream*: a source topic (every pipeline reading it) or ``slack-messages`` (the
delivery worker). Each consumes in a consumer group, processes micro-batches with the batch
runs' engine and ledger, and commits only what it finished; the tail sensors launch catch-up
runs only for what the workers have not committed within the lag bound.
"""
