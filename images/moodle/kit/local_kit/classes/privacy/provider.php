<?php
namespace local_kit\privacy;

defined('MOODLE_INTERNAL') || die();

/** The kit's plugin stores no personal data. */
class provider implements \core_privacy\local\metadata\null_provider {
    public static function get_reason(): string {
        return 'privacy:metadata';
    }
}
