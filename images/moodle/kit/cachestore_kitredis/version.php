<?php
// The kit's Redis cache store: Moodle's own Redis store, with the password read from the
// site's secret file when the connection is made, so Moodle's cache configuration (and the
// store's admin page) never holds it.
defined('MOODLE_INTERNAL') || die();

$plugin->component = 'cachestore_kitredis';
$plugin->version = 2026120200;
$plugin->requires = 2024100700;   // Moodle 4.5
$plugin->dependencies = ['cachestore_redis' => 2024100700];
$plugin->maturity = MATURITY_STABLE;
$plugin->release = '1.0';
