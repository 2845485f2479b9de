-- Housekeeping events. They run only while the server has event_scheduler=ON
-- (SET GLOBAL event_scheduler = ON, or event_scheduler=ON in my.cnf); the operator
-- also deletes expired sessions and cache entries itself, so nothing depends on them.

INSERT IGNORE INTO ha_settings (name, value) VALUES ('health_check_retention_days', '7');

CREATE EVENT IF NOT EXISTS ha_cleanup_health_checks
    ON SCHEDULE EVERY 1 DAY
    COMMENT 'Delete health checks older than ha_settings.health_check_retention_days'
    DO DELETE FROM ha_health_checks
       WHERE checked_at < NOW(3) - INTERVAL (
           SELECT CAST(value AS UNSIGNED) FROM ha_settings WHERE name = 'health_check_retention_days'
       ) DAY;

CREATE EVENT IF NOT EXISTS ha_cleanup_sessions
    ON SCHEDULE EVERY 1 HOUR
    COMMENT 'Delete expired shared sessions'
    DO DELETE FROM ha_sessions WHERE expires_at < NOW(3);

CREATE EVENT IF NOT EXISTS ha_cleanup_cache
    ON SCHEDULE EVERY 1 HOUR
    COMMENT 'Delete expired cache entries'
    DO DELETE FROM ha_cache WHERE expires_at IS NOT NULL AND expires_at < NOW(3);
