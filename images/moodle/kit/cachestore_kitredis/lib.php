<?php
// Moodle's Redis store with its password taken from the secret file at connect time.
// Its configuration (server, prefix, serializer...) is what configure.php writes; it has no
// password, and the store has no edit form of its own, so no admin page can show one.
defined('MOODLE_INTERNAL') || die();

require_once(__DIR__ . '/../redis/lib.php');   // included from inside functions: no $CFG here

class cachestore_kitredis extends cachestore_redis {
    protected function new_redis(array $configuration): Redis|RedisCluster|null {
        $configuration['password'] = kit_secret('redis_password');
        return parent::new_redis($configuration);
    }

    /** Only the kit adds this store (configure.php): never from the admin page. */
    public static function can_add_instance() {
        return false;
    }
}
