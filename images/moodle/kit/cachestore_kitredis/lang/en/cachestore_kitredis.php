<?php
defined('MOODLE_INTERNAL') || die();

$string['pluginname'] = 'Redis (deployment kit)';
$string['privacy:metadata'] = 'The deployment kit\'s Redis store keeps cached data only; see the Redis store.';
