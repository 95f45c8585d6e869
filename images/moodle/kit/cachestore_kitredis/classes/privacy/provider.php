<?php
namespace cachestore_kitredis\privacy;

defined('MOODLE_INTERNAL') || die();

/** Cached data only, as Moodle's Redis store. */
class provider implements \core_privacy\local\metadata\null_provider {
    public static function get_reason(): string {
        return 'privacy:metadata';
    }
}
