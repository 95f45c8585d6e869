<?php
defined('MOODLE_INTERNAL') || die();

$tasks = [
    [
        'classname' => '\cachestore_kitredis\task\ttl',
        'blocking' => 0,
        'minute' => 'R',
        'hour' => '*',
        'day' => '*',
        'month' => '*',
        'dayofweek' => '*',
        'disabled' => 0,
    ],
];
