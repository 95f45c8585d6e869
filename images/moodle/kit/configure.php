<?php
// Cluster settings Moodle keeps in its own store, applied by the kit on every rollout
// (idempotent): the application cache (MUC) mapped to Redis instead of shared disk.
// Prints "kit: changed ..." or "kit: ok" so Ansible can report changes truthfully.
define('CLI_SCRIPT', true);
require '/var/www/moodle/config.php';

use core_cache\store;

$storename = 'kit_redis';
$wanted = [
    'server' => getenv('KIT_REDIS_HOST') . ':6379',
    'prefix' => 'muc_',
    'password' => getenv('KIT_REDIS_PASSWORD'),
    'serializer' => 1,          // Redis::SERIALIZER_PHP
    'compressor' => 0,
    'connectiontimeout' => 3,
    'encryption' => false,
    'cafile' => '',
    'clustermode' => false,
];

$writer = cache_config_writer::instance();
$changes = [];
$stores = $writer->get_all_stores();
if (!isset($stores[$storename])) {
    $writer->add_store_instance($storename, 'redis', $wanted);
    $changes[] = 'added Redis store';
} else if (($stores[$storename]['configuration'] ?? []) != $wanted) {
    $writer->edit_store_instance($storename, 'redis', $wanted);
    $changes[] = 'updated Redis store';
}

$current = [];
foreach ($writer->get_mode_mappings() as $mapping) {
    $current[$mapping['mode']][] = $mapping['store'];
}
$mappings = [
    store::MODE_APPLICATION => [$storename],
    store::MODE_SESSION => ['default_session'],
    store::MODE_REQUEST => ['default_request'],
];
if (($current[store::MODE_APPLICATION] ?? []) !== [$storename]) {
    $writer->set_mode_mappings($mappings);
    $changes[] = 'application cache mapped to Redis';
}

if ($changes) {
    cache_helper::purge_all();
    echo 'kit: changed: ' . implode(', ', $changes) . "\n";
} else {
    echo "kit: ok\n";
}
