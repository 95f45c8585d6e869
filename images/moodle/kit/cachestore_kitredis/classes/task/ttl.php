<?php
namespace cachestore_kitredis\task;

defined('MOODLE_INTERNAL') || die();

/**
 * Expires the TTL definitions kept in the kit's Redis stores. Moodle's own task
 * (cachestore_redis\task\ttl) handles only stores of plugin 'redis', and the kit's Redis
 * runs with noeviction (sessions live there too), so expired keys must be deleted here.
 */
class ttl extends \core\task\scheduled_task {
    public function get_name(): string {
        return get_string('task_ttl', 'cachestore_redis');
    }

    public function execute(): void {
        $factory = \cache_factory::instance();
        $config = $factory->create_config_instance();
        foreach ($config->get_all_stores() as $storename => $storeconfig) {
            if ($storeconfig['plugin'] !== 'kitredis') {
                continue;
            }
            foreach ($config->get_definitions_by_store($storename) as $def) {
                if (empty($def['ttl']) || !empty($def['requireidentifiers'])) {
                    continue;
                }
                \cache::make($def['component'], $def['area']);
                $definition = $factory->create_definition($def['component'], $def['area']);
                foreach ($factory->get_store_instances_in_use($definition) as $store) {
                    if ($store instanceof \cachestore_kitredis) {
                        $info = $store->expire_ttl();
                        mtrace("{$def['component']}/{$def['area']}: deleted {$info['keys']} key(s)");
                    }
                }
            }
        }
    }

    /** Cache stores cannot be enabled or disabled, so the default check does not apply. */
    public function can_run(): bool {
        return true;
    }
}
