//! Atoms used by the NIF.

rustler::atoms! {
    // Messages.
    snakepit_reply,
    snakepit_chunk,
    snakepit_pool_event,
    recycle_worker,
    done,
    binary,

    // Reasons.
    pool,
    python,
    grpc,
    worker_exit,
    invalid_parameter,
    invalid_option,
    invalid_config,
    already_exists,
    bad_endpoint,
    bad_capacity,

    // Special floats.
    nan,
    infinity,
    neg_infinity,

    // pool_new config keys.
    name,
    affinity,
    max_queue_size,
    queue_timeout_ms,
    affinity_ttl_ms,
    max_affinity_entries,
    abandon_grace_ms,
    max_message_bytes,
    connect_timeout_ms,
    crash_verdict_ms,

    // pool_submit opts keys.
    session_id,
    timeout_ms,
    binary_parameters,
    metadata,
    stream,
    stream_window,
    retry_on_crash,

    // pool_workers / pool_stats keys.
    id,
    load,
    capacity,
    tainted,
    requests,
    dispatched,
    queued,
    queued_total,
    queue_timeouts,
    pool_saturated,
    worker_busy,
    session_worker_unavailable,
    pool_closed,
    cancelled,
    worker_lost,
    completed,
    recycles,
    in_flight,
    workers,
    available,
    busy,
    sessions,
    errors,
    monitored_callers,
    awaiting_reply,
    retries,
}
