<?php
// The kit's own Moodle plugin: a queue canary (an adhoc task that proves queued work runs,
// and can hold a worker for a while, so a test can kill it mid-task).
defined('MOODLE_INTERNAL') || die();

$plugin->component = 'local_kit';
$plugin->version = 2026120100;
$plugin->requires = 2024100700;   // Moodle 4.5
$plugin->maturity = MATURITY_STABLE;
$plugin->release = '1.0';
