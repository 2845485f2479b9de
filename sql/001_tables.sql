-- The legacy tables that tools outside Kubernetes read and write.
-- Applied by `whm-ha migrate`; works on MariaDB 10.6+ and MySQL 8.0+.

CREATE TABLE IF NOT EXISTS whm_cluster_nodes (
    id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    cluster_namespace VARCHAR(63)  NOT NULL,
    cluster_name      VARCHAR(63)  NOT NULL,
    node_name         VARCHAR(253) NOT NULL COMMENT 'WHMNode object name',
    node_id           INT UNSIGNED NOT NULL COMMENT 'small stable number, unique within the cluster',
    hostname          VARCHAR(253) NOT NULL,
    ip_address        VARCHAR(253) NOT NULL,
    port              INT UNSIGNED NOT NULL,
    priority          INT UNSIGNED NOT NULL DEFAULT 100,
    weight            INT UNSIGNED NOT NULL DEFAULT 1,
    role              ENUM('primary', 'secondary') NOT NULL DEFAULT 'secondary',
    status            ENUM('healthy', 'unhealthy', 'unknown', 'maintenance') NOT NULL DEFAULT 'unknown',
    last_health_check DATETIME(3)  NULL,
    created_at        DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at        DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uq_nodes_name (cluster_namespace, cluster_name, node_name),
    UNIQUE KEY uq_nodes_node_id (cluster_namespace, cluster_name, node_id),
    KEY ix_nodes_status (status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ha_failover_events (
    id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    event_uid         CHAR(36)     NOT NULL COMMENT 'idempotency key: a retried write never duplicates',
    cluster_namespace VARCHAR(63)  NOT NULL,
    cluster_name      VARCHAR(63)  NOT NULL,
    scope             ENUM('node', 'database') NOT NULL COMMENT 'WHM node failover or MySQL promotion',
    from_node         VARCHAR(253) NOT NULL DEFAULT '',
    to_node           VARCHAR(253) NOT NULL,
    failover_type     ENUM('automatic', 'manual') NOT NULL,
    reason            VARCHAR(4096) NOT NULL DEFAULT '',
    duration_ms       INT UNSIGNED NOT NULL DEFAULT 0,
    success           TINYINT(1)   NOT NULL DEFAULT 1,
    occurred_at       DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_failover_event_uid (event_uid),
    KEY ix_failover_cluster_time (cluster_namespace, cluster_name, occurred_at),
    KEY ix_failover_time (occurred_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ha_sessions (
    session_hash  CHAR(64)     NOT NULL COMMENT 'SHA-256 of the session id; the id itself is never stored',
    user_id       VARCHAR(255) NOT NULL,
    data          MEDIUMBLOB   NOT NULL,
    node          VARCHAR(253) NOT NULL DEFAULT '' COMMENT 'node that last touched the session',
    ip_address    VARCHAR(45)  NOT NULL DEFAULT '',
    user_agent    VARCHAR(512) NOT NULL DEFAULT '',
    created_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_activity DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    expires_at    DATETIME(3)  NOT NULL,
    PRIMARY KEY (session_hash),
    KEY ix_sessions_user (user_id),
    KEY ix_sessions_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ha_cache (
    cache_key  VARCHAR(255) NOT NULL,
    value      MEDIUMBLOB   NOT NULL,
    expires_at DATETIME(3)  NULL COMMENT 'NULL: never expires',
    created_at DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (cache_key),
    KEY ix_cache_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ha_health_checks (
    id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    cluster_namespace VARCHAR(63)  NOT NULL,
    cluster_name      VARCHAR(63)  NOT NULL,
    node_name         VARCHAR(253) NOT NULL,
    healthy           TINYINT(1)   NOT NULL,
    latency_ms        DOUBLE       NULL,
    message           VARCHAR(1024) NOT NULL DEFAULT '',
    checked_at        DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    KEY ix_health_node_time (cluster_namespace, cluster_name, node_name, checked_at),
    KEY ix_health_time (checked_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ha_settings (
    name  VARCHAR(64)  NOT NULL,
    value VARCHAR(255) NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
