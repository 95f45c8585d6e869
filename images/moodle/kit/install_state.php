<?php
// Prints whether Moodle is installed in the configured database: "installed" or "empty".
// Run in a one-off container before the installer, so the rollout needs no database
// client of its own and works the same on the kit's PostgreSQL and an external one.
define('CLI_SCRIPT', true);
define('CACHE_DISABLE_ALL', true);
require '/var/www/moodle/config.php';
echo $DB->get_manager()->table_exists('config') ? "installed\n" : "empty\n";
